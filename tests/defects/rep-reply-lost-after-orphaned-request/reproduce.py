#!/usr/bin/env python3
"""Reproduction: a REP socket loses the reply to a correct request after a peer sent a request
without its empty delimiter frame and hung up.

usage: reproduce.py HOST:PORT [ROUNDS]

HOST:PORT is a REP socket bound on TCP whose server answers every request (this project's chat
servers, or a three-line echo server). Each round connects over plain TCP, completes a ZMTP 3.0
NULL handshake as a DEALER, sends one two-frame message with no empty delimiter frame, and closes
the connection at once. Then a correct REQ client (pyzmq) sends one request and waits 2 s for the
reply. Exit status 0 when at least one reply was lost (the defect is present), 1 when every reply
arrived.
"""
import socket
import struct
import sys

import zmq


def greeting():
    # signature, version 3.0, mechanism NULL padded to 20 bytes, as-server 0, 31 bytes of filler
    return b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" + b"\0" * 31


def ready(socket_type):
    body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    return bytes([0x04, len(body)]) + body


def read_exactly(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("the peer closed the connection during the handshake")
        data += chunk
    return data


def orphan(host, port):
    """A request without the delimiter frame, from a peer that is gone before it is read."""
    with socket.create_connection((host, port), timeout=2) as sock:
        sock.sendall(greeting())
        read_exactly(sock, 64)
        sock.sendall(ready(b"DEALER"))
        _, size = read_exactly(sock, 2)
        read_exactly(sock, size)
        sock.sendall(b"\x01\x02no" + b"\x00\x09delimiter")  # frame "no" (MORE), frame "delimiter"


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    host, port = sys.argv[1].rsplit(":", 1)
    rounds = int(sys.argv[2]) if len(sys.argv) == 3 else 5
    context = zmq.Context()
    lost = 0
    for number in range(rounds):
        orphan(host, int(port))
        req = context.socket(zmq.REQ)
        req.linger = 0
        req.connect(f"tcp://{host}:{port}")
        req.send(f"probe{number}".encode())
        if req.poll(2000):
            req.recv_multipart()
        else:
            lost += 1
            print(f"round {number}: no reply within 2 s")
        req.close()
    context.term()
    print(f"{lost} of {rounds} replies lost")
    sys.exit(0 if lost else 1)


if __name__ == "__main__":
    main()
