"""Socket monitors (the launch contract, "Socket monitors"): with `--monitor on`, every socket whose
endpoint a flag gives reports its connection events as `socket-event` events."""
import itertools
import threading

import zmq
from zmq.utils.monitor import parse_monitor_message

from .contract import emit

KINDS = {  # libzmq's ZMQ_EVENT_* as the contract names them; MONITOR_STOPPED is not reported
    zmq.EVENT_CONNECTED: "connected",
    zmq.EVENT_CONNECT_DELAYED: "connect-delayed",
    zmq.EVENT_CONNECT_RETRIED: "connect-retried",
    zmq.EVENT_LISTENING: "listening",
    zmq.EVENT_BIND_FAILED: "bind-failed",
    zmq.EVENT_ACCEPTED: "accepted",
    zmq.EVENT_ACCEPT_FAILED: "accept-failed",
    zmq.EVENT_CLOSED: "closed",
    zmq.EVENT_CLOSE_FAILED: "close-failed",
    zmq.EVENT_DISCONNECTED: "disconnected",
    zmq.EVENT_HANDSHAKE_SUCCEEDED: "handshake-succeeded",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake-failed-no-detail",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake-failed-protocol",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "handshake-failed-auth",
}
_endpoints = itertools.count()  # one inproc endpoint per watched socket in the process


def add_flag(parser):
    parser.add_argument("--monitor", choices=("on", "off"), default="off")


def watch(socket, name, args):
    """With --monitor on, narrate `socket`'s connections as `socket-event`s named `name` (its flag)."""
    if args.monitor != "on":
        return
    # [monitor] A socket's events (connected, disconnected, handshake failures...) never arrive on
    # the socket itself: libzmq publishes them on an inproc PAIR that it binds. We connect our PAIR
    # at once, before the watched socket's bind or connect, because libzmq drops events while no
    # peer is there: `listening` and the first `connected` would be lost. A thread of its own reads
    # the PAIR, so the role's loop is the same with and without --monitor.
    endpoint = f"inproc://monitor.{name}-{next(_endpoints)}"
    socket.monitor(endpoint, zmq.EVENT_ALL)
    # zmq.Socket(), not context.socket(): context.destroy() closes the sockets it made, from the
    # main thread; this one is the monitor thread's, which closes it when the context ends (ETERM).
    pair = zmq.Socket(socket.context, zmq.PAIR)
    pair.linger = 0
    pair.connect(endpoint)
    # Starting the thread is the full memory barrier libzmq asks for when a socket changes threads.
    threading.Thread(target=_report, args=(pair, name), name=f"monitor-{name}", daemon=True).start()


def _report(pair, name):
    try:
        while True:
            message = parse_monitor_message(pair.recv_multipart())  # [16-bit event, 32-bit value], endpoint
            if message["event"] == zmq.EVENT_MONITOR_STOPPED:  # the watched socket was closed
                break
            kind = KINDS.get(message["event"])
            if kind:
                emit("socket-event", socket=name, kind=kind, value=message["value"],
                     endpoint=message["endpoint"].decode("utf-8", "replace"))
    except zmq.ZMQError:
        pass  # ETERM: the role is ending and its context with it
    finally:
        pair.close()
