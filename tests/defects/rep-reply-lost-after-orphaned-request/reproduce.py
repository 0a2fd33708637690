#!/usr/bin/env python3
"""Reproduction: after garbage that reads as ZMTP/1.0, a REP server's next reply can be lost.

usage: reproduce.py HOST:PORT [ROUNDS]

HOST:PORT is a REP socket bound on TCP whose server answers every one-frame request (any of this
project's chat servers, or a ten-line echo server). Each round opens two TCP connections that send
4 KiB of seeded noise and close (the first sends the noise as it is, the second behind the two
bytes 05 00, which a ZeroMQ library reads as a ZMTP/1.0 peer's identity), then a correct REQ client
(pyzmq) sends one request and waits 2 s for the reply. Exit status 0 when at least one reply was
lost (the defect is present), 1 when every reply arrived.
"""
import random
import socket
import sys

import zmq


def garbage(host, port, data):
    with socket.create_connection((host, port), timeout=2) as sock:
        sock.sendall(data)
        sock.settimeout(0.1)
        try:
            sock.recv(4096)
        except OSError:
            pass


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    host, port = sys.argv[1].rsplit(":", 1)
    rounds = int(sys.argv[2]) if len(sys.argv) == 3 else 10
    context = zmq.Context()
    lost = 0
    for number in range(rounds):
        noise = random.Random(f"round {number}").randbytes(4096)
        garbage(host, int(port), noise)
        garbage(host, int(port), b"\x05\x00" + noise)
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
