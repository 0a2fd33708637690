"""ZMTP security for any example that allows it (examples/README.md, "Security"): the flags, the
socket options of NULL, PLAIN and CURVE, a ZAP handler on inproc, and handshake-failure monitors."""
import argparse
import re
import struct

import zmq
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from .contract import Usage, emit, recv_if_ready

MECHANISMS = ("null", "plain", "curve")
Z85_KEY = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")  # 32 bytes in Z85 (RFC 32)
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks, for every handshake (RFC 27)
HANDSHAKE_FAILURES = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "no-detail",  # the peer hung up mid-handshake
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",  # e.g. a CURVE box that does not open
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth",  # ZAP said no; the value is its status code
}


def z85_key(value):
    try:
        if Z85_KEY.fullmatch(value) and len(z85.decode(value)) == 32:
            return value
    except (ValueError, struct.error):  # a group of 5 characters worth more than 4 bytes
        pass
    raise argparse.ArgumentTypeError("a CURVE key is 40 characters of Z85 that encode 32 bytes")


def credential(value):
    """A PLAIN username or password: 1 to 255 bytes (ZMTP's PLAIN frames them with one length byte)."""
    if not 1 <= len(value.encode()) <= 255:
        raise argparse.ArgumentTypeError("a PLAIN username or password is 1 to 255 bytes")
    return value


def z85_keys(value):
    return [z85_key(key) for key in value.split(",")]


def add_flags(parser, server):
    parser.add_argument("--security", choices=MECHANISMS, default="null")
    parser.add_argument("--curve-secret", type=z85_key)
    if server:
        parser.add_argument("--curve-clients", type=z85_keys)
    else:
        parser.add_argument("--curve-public", type=z85_key)
        parser.add_argument("--curve-server", type=z85_key)
    parser.add_argument("--plain-user", type=credential)
    parser.add_argument("--plain-password", type=credential)


def require(args, *flags):
    for flag in flags:
        if getattr(args, flag.replace("-", "_")) is None:
            raise Usage(f"--security {args.security} needs --{flag}")


def secure_server(args, context, sockets):
    """Make every socket of `sockets` ({flag name: socket}, not bound yet) a security server.
    Returns what the role's loop must poll: the ZAP handler (or None) and one monitor per socket."""
    zap = None
    if args.security == "curve":
        require(args, "curve-secret")
        if args.curve_clients:
            zap = ZapHandler(context, args)
    elif args.security == "plain":
        require(args, "plain-user", "plain-password")
        zap = ZapHandler(context, args)  # without one, libzmq's PLAIN server admits any password
    for socket in sockets.values():
        if args.security == "curve":
            # [CURVE] The server holds its secret key; every client must already know the matching
            # public key. Set before bind: the options are read when a connection starts.
            socket.curve_server = True
            socket.curve_secretkey = args.curve_secret.encode()
        elif args.security == "plain":
            # [PLAIN] A user name and a password, sent in clear. The server side only says "ask
            # ZAP": without a handler, libzmq would admit any password.
            socket.plain_server = True
    monitors = {} if args.security == "null" else {name: watch(socket) for name, socket in sockets.items()}
    return zap, monitors


def secure_client(args, sockets):
    """Give every socket (not connected yet) the client's credentials."""
    if args.security == "curve":
        require(args, "curve-secret", "curve-public", "curve-server")
    elif args.security == "plain":
        require(args, "plain-user", "plain-password")
    for socket in sockets:
        if args.security == "curve":
            # The client's copy of the server's public key, and its own key pair; before connect.
            socket.curve_serverkey = args.curve_server.encode()
            socket.curve_publickey = args.curve_public.encode()
            socket.curve_secretkey = args.curve_secret.encode()
        elif args.security == "plain":
            socket.plain_username = args.plain_user.encode()
            socket.plain_password = args.plain_password.encode()


def watch(socket):
    """A socket monitor (a PAIR on inproc) that reports only handshake failures."""
    return socket.get_monitor_socket(sum(HANDSHAKE_FAILURES))


def handshake_failure(monitor):
    """Read the monitor message a poll reported: (failure, value), or None if there was none."""
    frames = recv_if_ready(monitor)
    if frames is None:
        return None
    message = parse_monitor_message(frames)
    return HANDSHAKE_FAILURES[message["event"]], int(message["value"])


class ZapHandler:
    """Answers libzmq's ZAP requests (RFC 27): admits the allowed CURVE keys or the one PLAIN
    account, refuses everything else, and reports every answer as an event."""

    def __init__(self, context, args):
        self.args = args
        # [ZAP] libzmq asks a REP bound on inproc://zeromq.zap.01, in the same context, about every
        # handshake of a socket that is a security server: one request, one reply (200 or 400). It
        # is bound before the sockets it guards bind, so that no handshake goes unasked.
        self.socket = context.socket(zmq.REP)
        self.socket.linger = 0
        self.socket.bind(ZAP_ENDPOINT)

    def handle(self):
        """Answer the request a poll reported, if there is one after all."""
        request = recv_if_ready(self.socket)
        if request is None:
            return
        status, mechanism, identity, reason = self.decide(request)
        request_id = request[1] if len(request) > 1 else b""
        self.socket.send_multipart([b"1.0", request_id, status, reason.encode(), identity.encode(), b""])
        if status == b"200":
            emit("authenticated", mechanism=mechanism, identity=identity)
        else:
            emit("denied", mechanism=mechanism, identity=identity, reason=reason)

    def decide(self, request):
        """(status, mechanism, identity, reason) for one request: version, id, domain, address,
        routing id, mechanism, credentials..."""
        if len(request) < 6 or request[0] != b"1.0":
            return b"400", "", "", "not a ZAP 1.0 request"
        mechanism, credentials = request[5].decode("ascii", "replace"), request[6:]
        if mechanism == "CURVE" and len(credentials) == 1 and len(credentials[0]) == 32:
            key = z85.encode(credentials[0]).decode()
            if self.args.security == "curve" and key in self.args.curve_clients:
                return b"200", mechanism, key, "OK"
            return b"400", mechanism, key, "the key is not one of --curve-clients"
        if mechanism == "PLAIN" and len(credentials) == 2:
            user = credentials[0].decode("utf-8", "replace")
            if self.args.security == "plain" and credentials == [self.args.plain_user.encode(), self.args.plain_password.encode()]:
                return b"200", mechanism, user, "OK"
            return b"400", mechanism, user, "wrong username or password"
        return b"400", mechanism, "", f"cannot read {mechanism} credentials"
