"""The launch contract (examples/README.md) in Python: JSON Lines events on stdout, logs on stderr,
the --timeout deadline, fatal failures, and the flag types and stop signal every example uses."""
import argparse
import json
import signal
import sys
import threading
import time

import zmq


_output = threading.Lock()  # a role's threads (the desk's agents, socket monitors) share stdout
_finished = False


def emit(event, **fields):
    """Write one event as one JSON line and flush it at once, so the orchestrator sees it live."""
    write_line(json.dumps({"event": event, **fields}, ensure_ascii=False).encode(), event, own="agent" not in fields)


def write_line(line, event=None, own=True):
    """One line to stdout, written and flushed whole under the lock every thread shares. After the
    role's own `done`, a monitor's `socket-event`s are dropped: the contract makes `done` last."""
    global _finished
    with _output:
        if _finished and event == "socket-event":
            return
        sys.stdout.buffer.write(line + b"\n")
        sys.stdout.buffer.flush()
        _finished = _finished or (own and event == "done")


def log(message):
    print(message, file=sys.stderr, flush=True)


class Failure(Exception):
    """A fatal error: reported as an `error` event, then the role exits 1."""

    def __init__(self, code, reason):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Deadline:
    """The role's --timeout: milliseconds left, or None when there is no limit (0)."""

    def __init__(self, timeout_ms):
        self.end = time.monotonic() + timeout_ms / 1000 if timeout_ms > 0 else None

    def remaining_ms(self):
        if self.end is None:
            return None
        return max(0, int((self.end - time.monotonic()) * 1000))

    def expired(self):
        return self.end is not None and time.monotonic() >= self.end

    def cap(self, ms):
        """A poll timeout of at most `ms` that never runs past the deadline."""
        left = self.remaining_ms()
        return ms if left is None else min(ms, left)


class Usage(Exception):
    """A bad combination of flags that the parser alone cannot see: exit 2, like a parser error."""


def at_least(minimum):
    """An argparse type: an integer (milliseconds or a count) no smaller than `minimum`."""

    def parse(value):
        number = int(value)
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return number

    return parse


MAX_NAME = 32  # bytes of UTF-8: chat handles, subscriber names


def name(value):
    if not 1 <= len(value.encode()) <= MAX_NAME:
        raise argparse.ArgumentTypeError(f"a name is 1 to {MAX_NAME} bytes of UTF-8")
    return value


class StopSignal:
    """SIGTERM and SIGINT only raise a flag; the role looks at it after every poll, or waits for it.
    A signal that interrupts a poll or a receive (EINTR) is no error: pyzmq runs this handler and
    retries the call itself (a poll with the time it has left), so the loop sees the flag in time."""

    def __init__(self):
        self.event = threading.Event()
        signal.signal(signal.SIGTERM, self.raise_flag)
        signal.signal(signal.SIGINT, self.raise_flag)

    def raise_flag(self, *_):
        self.event.set()

    @property
    def raised(self):
        return self.event.is_set()

    def wait(self, timeout_ms):
        """True once raised; False if `timeout_ms` (None: no limit) passed first."""
        return self.event.wait(None if timeout_ms is None else timeout_ms / 1000)


def bind(socket, endpoint):
    """Bind, or fail with code `bind`; returns the endpoint actually bound (ZMQ_LAST_ENDPOINT,
    with the port the library chose for a wildcard `*`)."""
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as error:
        raise Failure("bind", f"cannot bind {endpoint}: {error}") from error
    return socket.last_endpoint.decode()


def connect(socket, endpoint):
    """Connect, or fail with code `connect` (a malformed endpoint; an absent peer is no error)."""
    try:
        socket.connect(endpoint)
    except zmq.ZMQError as error:
        raise Failure("connect", f"cannot connect to {endpoint}: {error}") from error


def recv_if_ready(socket, whole=True):
    """Read what a poll reported, without waiting: the message (a list of frames), or with
    `whole=False` its next frame alone; None if there was nothing after all.

    POLLIN is a hint, not a promise. REP silently drops a request it cannot route (a DEALER's
    without the empty delimiter frame), and REQ a reply, *inside* the receive; a blocking receive
    would then wait for the next message, deaf to the heartbeat, the deadline and the stop flag.
    So the first frame is read with NOBLOCK, and EAGAIN (zmq.Again) means "back to the loop". The
    other frames of a message arrive together with the first, so reading them cannot block."""
    try:
        return socket.recv_multipart(zmq.NOBLOCK) if whole else socket.recv(zmq.NOBLOCK)
    except zmq.Again:
        return None

