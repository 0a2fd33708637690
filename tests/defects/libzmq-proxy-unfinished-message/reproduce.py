#!/usr/bin/env python3
"""Reproduction: one subscriber stops libzmq's built-in proxy with two messages.

usage: reproduce.py

Self-contained (Python 3 and pyzmq). A proxy (zmq.proxy between an XSUB and an XPUB) runs in a
thread. A peer connects an XSUB to the proxy's XPUB and sends two messages, one burst each:
the subscription `\\x01ZZ`, then the two-frame message [`junk`, `\\x01ZZ`]. XPUB passes `junk` on
with its MORE flag and drops the repeated subscription, so the message never ends; zmq_proxy reads
`junk`, finds no next frame, and returns -1 with EAGAIN. Exit status 0 when the proxy ended that
way (the defect is present), 1 when it is still running after a second.
"""
import sys
import threading
import time

import zmq


def main():
    context = zmq.Context()
    xsub, xpub = context.socket(zmq.XSUB), context.socket(zmq.XPUB)
    xsub.bind("inproc://publisher")  # nothing publishes: only the subscription path matters
    xpub.bind("tcp://127.0.0.1:*")
    ended = {}

    def proxy():
        try:
            zmq.proxy(xsub, xpub)
        except zmq.ZMQError as error:
            ended["error"] = error

    threading.Thread(target=proxy, daemon=True).start()
    peer = context.socket(zmq.XSUB)
    peer.connect(xpub.last_endpoint.decode())
    peer.send(b"\x01ZZ")
    time.sleep(0.3)  # the two messages must reach the proxy in two bursts
    peer.send_multipart([b"junk", b"\x01ZZ"])
    time.sleep(1)
    if "error" in ended:
        print(f"zmq_proxy ended: {ended['error']} (errno {ended['error'].errno}): the defect is present")
        sys.exit(0)
    print("zmq_proxy is still running: the defect did not show")
    sys.exit(1)


if __name__ == "__main__":
    main()
