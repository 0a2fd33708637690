"""ZMTP by hand (RFC 23, ZMTP 3.0; RFC 37, 3.1): just enough bytes to be a peer that no ZeroMQ
library would ever be, for the hostile-peer battery (orchestrator/fuzz.py).

A ZMTP 3 connection starts with a 64-byte greeting from each side, then the mechanism's handshake
(for NULL: one READY command each way, carrying the socket type), then frames. Every frame, command
or message, is a flags byte (0x01 more, 0x02 long, 0x04 command), a size (one byte, or eight
big-endian bytes when long) and the body.
"""
import socket
import struct

SIGNATURE = b"\xff" + b"\0" * 8 + b"\x7f"
MORE, LONG, COMMAND = 0x01, 0x02, 0x04


def greeting(major=3, minor=0, mechanism=b"NULL", as_server=False):
    """The 64-byte ZMTP 3 greeting: signature, version, mechanism (20 bytes), as-server, filler."""
    return SIGNATURE + bytes([major, minor]) + mechanism.ljust(20, b"\0")[:20] + bytes([int(as_server)]) + b"\0" * 31


def header(flags, size):
    """A frame's flags and size: short (one byte) below 256 bytes, long (eight bytes) otherwise."""
    if size < 256 and not flags & LONG:
        return bytes([flags, size])
    return bytes([flags | LONG]) + struct.pack(">Q", size)


def frame(body, more=False):
    return header(MORE if more else 0, len(body)) + body


def message(frames):
    return b"".join(frame(body, more=index < len(frames) - 1) for index, body in enumerate(frames))


def command(name, body=b""):
    data = bytes([len(name)]) + name + body
    return header(COMMAND, len(data)) + data


def ready(socket_type):
    """The NULL mechanism's READY command: one property, Socket-Type (a 4-byte big-endian length)."""
    name, value = b"Socket-Type", socket_type.encode()
    return command(b"READY", bytes([len(name)]) + name + struct.pack(">I", len(value)) + value)


class Peer:
    """One TCP connection to a ZeroMQ endpoint, spoken to byte by byte. Every method tolerates the
    other side hanging up: a target is allowed to drop a peer that misbehaves."""

    def __init__(self, host, port, timeout=2.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.closed = False

    def send(self, data):
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            self.closed = True
            return False

    def read(self, count):
        """Up to `count` bytes; fewer when the target hangs up or says nothing within the timeout."""
        data = b""
        try:
            while len(data) < count:
                chunk = self.sock.recv(count - len(data))
                if not chunk:
                    self.closed = True
                    break
                data += chunk
        except OSError:
            pass
        return data

    def read_frame(self):
        """(flags, body) of the next frame, or None."""
        first = self.read(1)
        if not first:
            return None
        flags = first[0]
        size_bytes = self.read(8 if flags & LONG else 1)
        if not size_bytes:
            return None
        size = struct.unpack(">Q", size_bytes)[0] if flags & LONG else size_bytes[0]
        if size > 1 << 20:
            return None
        return flags, self.read(size)

    def handshake(self, socket_type):
        """Greet as ZMTP 3.0 with NULL and say READY as `socket_type`. True when the target answered
        with its own READY, so that what follows reaches its decoder as frames."""
        if not self.send(greeting()):
            return False
        if len(self.read(64)) < 64 or not self.send(ready(socket_type)):
            return False
        answer = self.read_frame()
        return bool(answer and answer[0] & COMMAND and answer[1][1:6] == b"READY")

    def hold(self, seconds):
        """Keep the connection open, reading what comes, for at most `seconds`."""
        self.sock.settimeout(seconds)
        self.read(1 << 16)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
