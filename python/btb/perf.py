"""perf: throughput and latency as libzmq's perf tools measure them (examples/perf/PROTOCOL.md)."""
import threading
import time

import zmq

from .contract import Deadline, Failure, at_least, bind, connect, emit

THROUGHPUT_COUNT, LATENCY_COUNT = 100000, 10000
# ZMQ_MAXMSGSIZE is max(--size, this): libzmq drops a bigger frame together with the sender's
# connection, and the same limit applies to the handshake's READY command, which needs room.
MIN_MAX_MESSAGE = 256


def add_roles(roles):
    for name, run, count, networked in [
        ("thr-sink", run_thr_sink, THROUGHPUT_COUNT, True),
        ("thr-source", run_thr_source, THROUGHPUT_COUNT, True),
        ("lat-echo", run_lat_echo, LATENCY_COUNT, True),
        ("lat-ping", run_lat_ping, LATENCY_COUNT, True),
        ("inproc-thr", run_inproc_thr, THROUGHPUT_COUNT, False),
    ]:
        role = roles.add_parser(name)
        if networked:
            role.add_argument("--endpoint", default="tcp://127.0.0.1:5570")
        role.add_argument("--size", type=at_least(0), default=64)
        role.add_argument("--count", type=at_least(1), default=count)
        role.add_argument("--timeout", type=at_least(0), default=60000)
        role.set_defaults(run=run)


def socket(context, kind, endpoint, binds, timeout, size, linger=0):
    sock = context.socket(kind)
    sock.linger = linger
    sock.maxmsgsize = max(size, MIN_MAX_MESSAGE)  # (inproc has no decoder: no effect there)
    # Every send and receive waits at most the role's --timeout (-1: no limit), without a poll
    # per message, which would cost as much as the message itself.
    sock.rcvtimeo = sock.sndtimeo = timeout or -1
    (bind if binds else connect)(sock, endpoint)
    return sock


def receive(sock, size):
    """One message: a single frame of exactly `size` bytes."""
    try:
        message = sock.recv(copy=False)
    except zmq.Again:
        raise Failure("timeout", "no message within the timeout") from None
    if len(message) != size or message.more:
        raise Failure("wrong-size", f"a message of {len(message)} bytes{' and more frames' if message.more else ''}, expected {size}")
    return message


def send(sock, message):
    try:
        # pyzmq copies small messages faster than it hands them over without copying (zero-copy
        # pays off from tens of kB on, where a copy starts to cost more than the bookkeeping).
        sock.send(message, copy=len(message) < 65536)
    except zmq.Again:
        raise Failure("timeout", "no room to send within the timeout") from None


def check(deadline, done):
    """The deadline, looked at once every 1000 messages: cheap, and bounds the loop in time."""
    if done % 1000 == 0 and deadline.expired():
        raise Failure("timeout", f"not finished by the deadline ({done} messages)")


def throughput(size, count, seconds):
    rate = count / seconds if seconds > 0 else float("inf")
    return {"size": size, "count": count, "seconds": seconds, "msg_per_s": rate, "mbit_per_s": rate * size * 8 / 1e6}


def sink(pull, size, count, deadline):
    """Receive `count` messages; time from the first arrival to the last (libzmq's local_thr)."""
    receive(pull, size)
    started = time.perf_counter()
    for done in range(1, count):
        check(deadline, done)
        receive(pull, size)
    return throughput(size, count, time.perf_counter() - started)


def source(push, size, count, deadline):
    message = bytes(size)
    for done in range(count):
        check(deadline, done)
        # PUSH blocks while the sink's queue is full (the high-water mark): that is the flow
        # control being measured.
        send(push, message)


def run_thr_sink(args):
    deadline = Deadline(args.timeout)
    context = zmq.Context()
    pull = socket(context, zmq.PULL, args.endpoint, binds=True, timeout=args.timeout, size=args.size)
    emit("ready", endpoint=pull.last_endpoint.decode())
    emit("result", **sink(pull, args.size, args.count, deadline))
    emit("done")
    context.destroy()


def run_thr_source(args):
    deadline = Deadline(args.timeout)
    context = zmq.Context()
    # Linger: the last messages are still queued when send() returns; wait for them (bounded).
    push = socket(context, zmq.PUSH, args.endpoint, binds=False, timeout=args.timeout, size=args.size, linger=args.timeout or -1)
    emit("ready")
    source(push, args.size, args.count, deadline)
    emit("done")
    context.destroy()  # returns once the queue is delivered, or the linger runs out


def run_lat_echo(args):
    deadline = Deadline(args.timeout)
    context = zmq.Context()
    # Linger, as for a source: the last reply is still queued when the loop ends.
    rep = socket(context, zmq.REP, args.endpoint, binds=True, timeout=args.timeout, size=args.size, linger=args.timeout or -1)
    emit("ready", endpoint=rep.last_endpoint.decode())
    for done in range(args.count):
        check(deadline, done)
        send(rep, receive(rep, args.size))  # REP: the reply goes back to whoever asked
    emit("done")
    context.destroy()


def run_lat_ping(args):
    deadline = Deadline(args.timeout)
    context = zmq.Context()
    req = socket(context, zmq.REQ, args.endpoint, binds=False, timeout=args.timeout, size=args.size)
    emit("ready")
    message = bytes(args.size)
    started = time.perf_counter()
    for done in range(args.count):
        check(deadline, done)
        send(req, message)  # REQ: strictly one request, then its reply
        receive(req, args.size)
    seconds = time.perf_counter() - started
    emit("result", size=args.size, count=args.count, seconds=seconds, latency_us=seconds * 1e6 / (2 * args.count))
    emit("done")
    context.destroy()


def run_inproc_thr(args):
    """Both halves in one process: inproc:// is a queue between threads that the context carries,
    with no network stack at all."""
    deadline = Deadline(args.timeout)
    context = zmq.Context()
    pull = socket(context, zmq.PULL, "inproc://perf", binds=True, timeout=args.timeout, size=args.size)  # inproc: bind first
    push = socket(context, zmq.PUSH, "inproc://perf", binds=False, timeout=args.timeout, size=args.size, linger=args.timeout or -1)
    emit("ready")
    failures = []

    def send_all():
        try:
            source(push, args.size, args.count, deadline)
        except Failure as failure:
            failures.append(failure)

    sender = threading.Thread(target=send_all)  # a socket belongs to one thread: push is the sender's
    sender.start()
    try:
        result = sink(pull, args.size, args.count, deadline)
    finally:
        sender.join()
    if failures:
        raise failures[0]
    emit("result", **result)
    emit("done")
    context.destroy()
